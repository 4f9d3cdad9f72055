-- A read-only PostgreSQL role for EMQX's device authentication (deploy/emqx/emqx.conf): it may read
-- the device and credential tables and nothing else. Run once as the database owner; set the
-- password from a secret, e.g. psql -v pw="$(cat emqx_auth_password)" -f auth-role.sql
CREATE ROLE emqx_auth LOGIN PASSWORD :'pw';
GRANT CONNECT ON DATABASE edgefleet TO emqx_auth;
GRANT USAGE ON SCHEMA public TO emqx_auth;
GRANT SELECT (id, device_id, revoked_at) ON fleet_device TO emqx_auth;
GRANT SELECT (device_id, secret_hash, created_at, revoked_at) ON fleet_devicecredential TO emqx_auth;
