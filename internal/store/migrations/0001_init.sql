CREATE TABLE images (
	name       TEXT PRIMARY KEY,
	rootfs     TEXT NOT NULL,
	kernel     TEXT NOT NULL,
	initrd     TEXT NOT NULL DEFAULT '',
	managed    INTEGER NOT NULL DEFAULT 0,
	size_bytes INTEGER NOT NULL DEFAULT 0,
	created_at TEXT NOT NULL
);

CREATE TABLE vms (
	id          TEXT PRIMARY KEY,
	name        TEXT NOT NULL UNIQUE,
	image       TEXT NOT NULL REFERENCES images(name),
	state       TEXT NOT NULL,
	vcpu        INTEGER NOT NULL,
	memory_mib  INTEGER NOT NULL,
	disk_size   INTEGER NOT NULL,
	work_size   INTEGER NOT NULL,
	ip          TEXT NOT NULL UNIQUE,
	mac         TEXT NOT NULL,
	tap         TEXT NOT NULL,
	driver      TEXT NOT NULL,
	-- teardown identity, recorded before the thing is created
	root_json   TEXT NOT NULL DEFAULT '{}',
	work_path   TEXT NOT NULL,
	dir         TEXT NOT NULL,
	-- the running VMM (vmm.Handle JSON), '' when not running
	handle_json TEXT NOT NULL DEFAULT '',
	boot_id     TEXT NOT NULL DEFAULT '',
	stages_json TEXT NOT NULL DEFAULT '[]',
	last_error  TEXT NOT NULL DEFAULT '',
	created_at  TEXT NOT NULL,
	started_at  TEXT NOT NULL DEFAULT ''
);
