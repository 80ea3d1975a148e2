// Command etcd is the etcd server, built at the version that the pinned Kubernetes release depends on,
// so the test control plane and the ledger tests use an etcd that Kubernetes itself was tested with.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
