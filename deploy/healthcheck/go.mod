module github.com/aigov/aigov/deploy/healthcheck

go 1.26.8
