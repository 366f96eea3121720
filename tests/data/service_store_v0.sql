-- The job store's schema as created before migrations (service/store.py create_all,
-- SQLite), dumped with sqlite3's iterdump: the baseline revision 0001 must equal it.
CREATE TABLE api_keys (
	id VARCHAR(32) NOT NULL, 
	tenant VARCHAR(64) NOT NULL, 
	key_hash VARCHAR(64) NOT NULL, 
	created_at FLOAT NOT NULL, 
	revoked_at FLOAT, 
	PRIMARY KEY (id), 
	UNIQUE (key_hash)
);
CREATE TABLE audits (
	id VARCHAR(32) NOT NULL, 
	tenant VARCHAR(64) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	spec TEXT NOT NULL, 
	policy_kind VARCHAR(64) NOT NULL, 
	scenario VARCHAR(128) NOT NULL, 
	idempotency_key VARCHAR(255), 
	request_hash VARCHAR(64) NOT NULL, 
	progress FLOAT NOT NULL, 
	phase VARCHAR(200) NOT NULL, 
	created_at FLOAT NOT NULL, 
	started_at FLOAT, 
	finished_at FLOAT, 
	verdict VARCHAR(16), 
	exit_code INTEGER, 
	mlflow_run_id VARCHAR(64), 
	mlflow_experiment_id VARCHAR(64), 
	error TEXT, 
	attempts INTEGER NOT NULL, 
	owner VARCHAR(200), 
	heartbeat FLOAT, 
	cancel_requested BOOLEAN NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_audits_tenant_idem UNIQUE (tenant, idempotency_key)
);
CREATE TABLE policies (
	id VARCHAR(32) NOT NULL, 
	tenant VARCHAR(64) NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	model VARCHAR(32) NOT NULL, 
	model_type VARCHAR(16) NOT NULL, 
	num_items INTEGER NOT NULL, 
	num_users INTEGER NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	size_bytes INTEGER NOT NULL, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE service_meta (
	"key" VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL, 
	PRIMARY KEY ("key")
);
CREATE INDEX ix_api_keys_tenant ON api_keys (tenant);
CREATE INDEX ix_audits_tenant_created ON audits (tenant, created_at);
CREATE INDEX ix_audits_status_created ON audits (status, created_at);
CREATE INDEX ix_policies_tenant ON policies (tenant);
