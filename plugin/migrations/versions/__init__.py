"""The job store's revisions, oldest first: ``revNNNN_<what changes>.py``."""
