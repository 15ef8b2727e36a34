"""tripletface: train and use face-embedding models with triplet loss (TensorFlow / Keras 3).

Importing the package does no work: TensorFlow and the detector load only when a
function that needs them is called.
"""

__version__ = "0.1.0"
