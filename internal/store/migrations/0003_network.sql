-- Per-VM network options: NAT (masquerade outward) and published ports
-- (JSON array of "[hostip:]hostport:guestport[/proto]" specs).
ALTER TABLE vms ADD COLUMN nat INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vms ADD COLUMN publish_json TEXT NOT NULL DEFAULT '[]';
