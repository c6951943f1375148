"""What a job is: the spec, the task types and the output layout. No Celery here."""
