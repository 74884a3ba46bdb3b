"""On PYTHONPATH for the processes of a federated run only (pipeline/training/federated/job.py).

Flower's simulation runtime imports TensorFlow whenever it is installed, for a GPU memory
helper tinyops never calls: 3-10 s and hundreds of MB in the driver and in every Ray actor.
The clients and the server train torch models, so TensorFlow is marked absent here, and that
import finds nothing.
"""

import sys

sys.modules.setdefault("tensorflow", None)  # type: ignore[arg-type]
