-- The workspace copied into a VM (vm run PATH / vm workspace prepare):
-- JSON of api.Workspace, '' when none.
ALTER TABLE vms ADD COLUMN workspace_json TEXT NOT NULL DEFAULT '';
