"""Training: embeddings and their cache, the head's training loop, read-outs fitted after it, backbone fine-tuning."""
