"""What the entry points src/train.py, src/evaluate.py and src/generate.py run, one module
each: a validated Config turned into its outputs. src/prepare.py and src/classifier.py call
dcgan.data.prepare and dcgan.domain_classifier directly."""
