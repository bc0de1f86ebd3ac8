# medguard-airflow: Airflow's HashiCorp Vault secrets backend (AIRFLOW__SECRETS__BACKEND and
# AIRFLOW__WORKERS__SECRETS_BACKEND). Reads connections and variables from the KV v2 mount `airflow`
# (airflow/connections/<conn_id>, airflow/variables/<key>), nothing else: the medguard_vault connection it reads
# holds the medguard-pipeline AppRole's credentials, which the tasks then use for Transit.

path "airflow/data/connections/*" {
  capabilities = ["read"]
}

path "airflow/data/variables/*" {
  capabilities = ["read"]
}
