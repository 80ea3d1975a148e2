//go:build tools

// Package tools pins the kwok command that simulates nodes and pod lifecycles for the test bed.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
