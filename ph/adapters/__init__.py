"""Who calls ph, each translated into calls of ph.api or the heads service: the Jaseci
module (jaseci), the command line (cli), the training job runner (job_runner: a local
job process, or `ph worker`'s task) and the Celery worker (training_worker). The HTTP
server lives in ph.server."""
