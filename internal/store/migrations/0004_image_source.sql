-- Where an image came from and what banger keeps for it.
--   source:  'registered' (host files, unmanaged), 'oci' (image pull REF),
--            'catalog' (image pull NAME), 'promoted' (image promote)
--   ref:     the registry reference or catalog name it was pulled from
--   digest:  the manifest digest (oci) or bundle sha256 (catalog)
--   dir:     the image's directory in banger's store ('' when unmanaged)
--   content_bytes: bytes of file content in the root filesystem
--   work_seed: a tar applied to each new work disk ('' for none)
ALTER TABLE images ADD COLUMN source TEXT NOT NULL DEFAULT 'registered';
ALTER TABLE images ADD COLUMN ref TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN digest TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN dir TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN content_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE images ADD COLUMN work_seed TEXT NOT NULL DEFAULT '';
