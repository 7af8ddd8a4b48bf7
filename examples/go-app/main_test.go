package main

import "testing"

func TestLabel(t *testing.T) {
	if got := Label(42); got != "build-000042" {
		t.Fatalf("Label(42) = %q", got)
	}
	if got := Label(1234567); got != "build-1234567" {
		t.Fatalf("Label(1234567) = %q", got)
	}
}
