// Command banger is the CLI: one-command development sandboxes on microVMs.
package main

import (
	"os"

	"banger/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }
