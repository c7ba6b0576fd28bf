"""Many files: planning the jobs, the resume journal, the pipelined runner, reports, and the whole batch as one library
call.
"""
