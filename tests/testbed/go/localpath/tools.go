//go:build tools

// Package tools pins rancher's local-path-provisioner (dynamic hostPath PVs) for the test bed's real node.
package tools

import (
	_ "github.com/rancher/local-path-provisioner"
)
