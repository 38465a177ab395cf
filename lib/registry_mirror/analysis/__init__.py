"""What the mirror did and saved, from its logs: parsed and aggregated by DuckDB, streamed, never a
Python loop over lines.

    proxy_logs     the security proxy's access logs (both formats, cf logs dumps) as a DuckDB table
    pull_savings   pulls served, Docker Hub pulls needed, denied clients, per image and per window
"""
