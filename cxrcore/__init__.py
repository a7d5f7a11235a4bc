"""cxrcore: the chest X-ray toolkit behind the CXR Dashboard (no Streamlit, no UI).

Importing this package is cheap: TensorFlow and other heavy libraries are imported only by the
modules that need them (images, pipeline, model, training, cams), so data-only commands stay fast.
"""
from cxrcore.data.labels import LABELS, NO_FINDING
from cxrcore.errors import CxrError, DatasetError, DataWarning

__all__ = ["CxrError", "DatasetError", "DataWarning", "LABELS", "NO_FINDING"]
__version__ = "0.1.0"
