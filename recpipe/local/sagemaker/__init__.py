"""Local SageMaker: processing, training, model and batch-transform jobs that follow the service's
container contracts (docs/CONTRACTS.md), for the ``sagemaker`` Task states of the state machine.

Each job gets a fresh temporary directory standing in for ``/opt/ml`` (passed to the job as the
environment variable ``RECPIPE_OPT_ML``); inputs are downloaded from (moto) S3 into it exactly where
SageMaker would put them, the job runs, and its outputs are uploaded where SageMaker would upload
them. Results have the shape of the service's responses: ``.sync`` integrations return the
``Describe*`` response, plain ones the ``Create*`` response.

Failures are reported as Step Functions reports them:

- a request SageMaker would reject (missing field, bad or duplicate job name, unknown model) raises
  ``SageMaker.AmazonSageMakerException`` with the service's message in the cause;
- a ``.sync`` job that ends ``Failed`` raises ``States.TaskFailed`` whose cause is the job's
  ``Describe*`` response as JSON (``TrainingJobStatus: Failed``, ``FailureReason``, ...).

Algorithms are chosen by image URI: an image whose repository name contains
``factorization-machines`` runs :func:`recpipe.algorithms.fm.run_training_job`, one containing
``knn`` runs :func:`recpipe.algorithms.knn.run_training_job` (and ``run_transform`` for batch
transform). Processing jobs run the request's ``ContainerEntrypoint`` as a subprocess with this
interpreter, ``/opt/ml`` paths remapped to the job's directory.

Modules: :mod:`.service` (:class:`~recpipe.local.sagemaker.service.LocalSageMaker`, the Task
states' handler), one per job kind (:mod:`.processing`, :mod:`.training` with the cores shared by
concurrent training jobs, :mod:`.transform` with models), and :mod:`.jobs` (what they share).
"""
