// kiln's go example: a label made with a dependency from a module proxy.
package main

import (
	"fmt"
	"os"

	"kiln.test/pad"
)

// Label is a build number, zero-padded to six digits.
func Label(n int) string {
	return "build-" + pad.Left(fmt.Sprint(n), 6, "0")
}

func main() {
	if err := os.MkdirAll("dist", 0o755); err != nil {
		panic(err)
	}
	if err := os.WriteFile("dist/label.txt", []byte(Label(7)+"\n"), 0o644); err != nil {
		panic(err)
	}
	fmt.Println("go-app: built dist/label.txt")
}
