"""The work of the entry points that use a trained generator or make one (train, evaluate,
generate); each turns a validated Config into its outputs. The prepare and classifier
stages' work is in dcgan.data.prepare and dcgan.domain_classifier."""
