"""Memory sync and search across Session-Buddy and Akosha: the aggregator (`aggregator.py`),
its watermark (`watermark.py`), the two services (`destinations.py`), sync statistics
(`stats.py`) and search over every source (`search.py`)."""
