"""The read API: ``GET /recommendations/{user_id}``, ``GET /similar/{item_id}`` (``handler.py``)."""
