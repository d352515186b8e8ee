"""The media types of the built-in algorithms' data, stated once for the state machine's requests
(``workflows.definition``), the Lambdas that write such data and the local stand-ins that check it.

Stdlib only and import-free: the definition and the Lambdas import it without numpy.
"""

from __future__ import annotations

#: recordio-protobuf: the FM training channels, the k-NN training and batch transform input.
RECORDIO_PROTOBUF = "application/x-recordio-protobuf"
#: The k-NN batch transform output the pipeline asks for (labels and distances per query).
KNN_VERBOSE_JSONLINES = "application/jsonlines; verbose=true"
