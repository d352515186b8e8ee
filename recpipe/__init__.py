"""recpipe: batch recommendations (SageMaker FM + k-NN under Step Functions), deployable and local.

Importing the package is cheap on purpose: the Lambdas and the processing job ship parts of it.
"""

__version__ = "0.1.0"
