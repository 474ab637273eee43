"""From files to batches: RecordIO, face-set layouts, datasets, the decoded-image cache, loader, .bin sets."""
