# Flag parsing shared by run_dataflow.sh and run_flink.sh; source it, then for each argument:
#   next_flag "$@"            sets flag (the name) and value (from --flag=value, or empty)
#   take "$@"                 for a flag that needs a value: takes it from the next argument
#                             when it was not given with "="
#   shift "$shift_by"         moves past what was consumed
next_flag() { flag=$1 value= shift_by=1; case "$flag" in --*=*) value=${flag#*=} flag=${flag%%=*} ;; esac; }
take() {
  [ -n "$value" ] && return
  if [ $# -lt 2 ]; then echo "$(basename "$0"): error: $1 needs a value; see --help" >&2; exit 2; fi
  value=$2 shift_by=2
}
