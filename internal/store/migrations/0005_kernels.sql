-- Kernels in banger's kernel store: a kernel image and its modules tree
-- under dir (vmlinuz, modules/RELEASE). image_kernels links an image to the
-- store kernel it boots with (images registered with --kernel FILE have no
-- row); the foreign key keeps a kernel in use from being removed.
CREATE TABLE kernels (
	name       TEXT PRIMARY KEY,
	release    TEXT NOT NULL,
	dir        TEXT NOT NULL,
	source     TEXT NOT NULL,
	size_bytes INTEGER NOT NULL,
	created_at TEXT NOT NULL
);
CREATE TABLE image_kernels (
	image  TEXT PRIMARY KEY REFERENCES images(name) ON DELETE CASCADE,
	kernel TEXT NOT NULL REFERENCES kernels(name)
);
