package guest

import "strings"

// ShellJoin quotes each argument for a POSIX shell and joins them, so a
// remote shell (ssh joins its arguments into one command line) sees exactly
// these argv. The command word is always quoted: `FOO=1` or `if` must run as
// a command, not as an assignment or a keyword.
func ShellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if i > 0 && a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == "" {
			q[i] = a
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
