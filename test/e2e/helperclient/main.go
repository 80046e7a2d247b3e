// Command helperclient sends one raw request to banger's root helper and
// prints the outcome as JSON ({"refused":…,"error":…}). The e2e suite runs
// it as the unprivileged owner to show what the helper refuses.
//
// Usage: helperclient SOCKET REQUEST_JSON
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"banger/internal/privileged"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: helperclient SOCKET REQUEST_JSON")
		os.Exit(2)
	}
	var req privileged.Request
	if err := json.Unmarshal([]byte(os.Args[2]), &req); err != nil {
		fmt.Fprintln(os.Stderr, "helperclient:", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, files, err := (&privileged.Client{Socket: os.Args[1]}).Do(ctx, req)
	for _, f := range files {
		f.Close()
	}
	out := struct {
		Refused bool   `json:"refused"`
		Error   string `json:"error,omitempty"`
	}{Refused: errors.Is(err, privileged.ErrRefused)}
	if err != nil {
		out.Error = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
