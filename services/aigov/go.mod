module github.com/aigov/aigov/services/aigov

go 1.26.8
