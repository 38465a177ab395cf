module registry-mirror/blob-fanout

// Debian 12's Go (the CI task image builds this at deploy time): the standard library only.
go 1.19
