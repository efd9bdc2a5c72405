"""offsim member."""
