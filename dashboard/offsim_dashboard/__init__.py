"""offsim member: the live dashboard."""
