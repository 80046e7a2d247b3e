package cli

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"banger/internal/doctor"
	"banger/internal/paths"
)

// doctorCmd runs every doctor check locally; it never starts the daemon and
// writes nothing. The exit status is 1 when a check FAILs.
func (a *app) doctorCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host for what banger needs (PASS/WARN/FAIL with fixes)",
		Long: "Run banger's host checks in parallel: architecture, KVM (a real boot probe) and the accelerator QEMU\n" +
			"will use, the VMMs, disk and network tools and devices, the config file, the store (read-only), the\n" +
			"default image, the SSH key, the daemon and the ssh-config Include. Nothing is started or written.\n" +
			"Every WARN and FAIL comes with its fix; the exit status is 1 when any check FAILs.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := paths.Resolve(false)
			if err != nil {
				return err
			}
			rs := doctor.Run(cmd.Context(), doctor.NewEnv(l), doctor.Checks())
			if a.json {
				// Not printJSON: remedies hold shell commands ("&&", ">="),
				// which read better unescaped.
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				enc.SetEscapeHTML(false)
				if err := enc.Encode(rs); err != nil {
					return err
				}
			} else if err := a.printDoctor(rs); err != nil {
				return err
			}
			if doctor.Failed(rs) != nil {
				return ExitError{Code: 1}
			}
			return nil
		},
	}
	return a.addJSON(c)
}

// printDoctor prints one row per check and, under a WARN or FAIL, its fix.
func (a *app) printDoctor(rs []doctor.Result) error {
	w := newTable(a.stdout)
	w.row("CHECK", "STATUS", "EVIDENCE")
	n := map[doctor.Status]int{}
	for _, r := range rs {
		n[r.Status]++
		w.row(r.Name, string(r.Status), r.Evidence)
		if r.Status != doctor.Pass && r.Remedy != "" {
			w.row("", "", "fix: "+r.Remedy)
		}
	}
	if err := w.flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(a.stdout, "\n%d passed, %d warnings, %d failed\n", n[doctor.Pass], n[doctor.Warn], n[doctor.Fail])
	return err
}
