"""One module per DVC stage; each turns a validated Config into that stage's outputs."""
