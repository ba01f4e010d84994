"""Text helpers shared by metrics and interop: answer normalisation."""
