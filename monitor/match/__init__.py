"""Rule matching: query trees, tokenised item text, and the matcher that ties them (pure)."""
