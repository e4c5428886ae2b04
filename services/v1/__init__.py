"""Generated from protos/genmesh/v1 by scripts/gen_protos.sh; do not edit."""
