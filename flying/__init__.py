"""Flying: live DP <-> TP layout switching for LLM serving."""
__version__ = "0.1.0"
