"""Fine-tuning on the data plane: heads on frozen embeddings, LoRA adapters, the job runner
and its Celery task on the ``training`` queue. No Django, no database."""
