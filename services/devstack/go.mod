module github.com/aigov/aigov/services/devstack

go 1.26.8
