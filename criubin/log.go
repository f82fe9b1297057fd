package criubin

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// Limits of LogErrors: lines of context before each error line, and lines
// in all.
const (
	logContext  = 2
	logMaxLines = 20
)

// errorRE matches CRIU's error prefix, "Error (file:line): ", after the
// timestamp and the optional pid or "pie: N:" prefix.
var errorRE = regexp.MustCompile(`\bError \([^()]*:\d+\): `)

// benign are error messages CRIU logs while the operation goes on: on a
// host without CAP_SYS_RESOURCE every log has "Can't setup RLIMIT_NOFILE
// for self". They are left out unless the log has no other error.
var benign = []string{
	"Can't setup RLIMIT_NOFILE for self",
}

// errorMessage returns the message of a CRIU error line, without the
// timestamp, pid and "Error (file:line): " prefix.
func errorMessage(line string) (string, bool) {
	loc := errorRE.FindStringIndex(line)
	if loc == nil {
		return "", false
	}
	return strings.TrimSpace(line[loc[1]:]), true
}

// isSummary reports whether an error message is CRIU's closing
// "Dumping FAILED." or "Restoring FAILED.", which explains nothing.
func isSummary(msg string) bool {
	return strings.HasSuffix(msg, " FAILED.")
}

func isBenign(msg string) bool {
	for _, b := range benign {
		if strings.Contains(msg, b) {
			return true
		}
	}
	return false
}

// LogErrors returns CRIU's own explanation of a failure from its log
// (dump.log, restore.log): each error line ("Error (file:line): ...") with
// up to 2 lines before it for context, in log order, each line once and an
// error message repeated later left out, at most 20 lines; and reason, the
// message of the first error that says what went wrong (not the closing
// "Dumping FAILED.", nor an error CRIU logs on every run here, such as
// "Can't setup RLIMIT_NOFILE for self"). A log without errors gives no
// lines and an empty reason.
func LogErrors(logPath string) (lines []string, reason string, err error) {
	f, err := os.Open(logPath)
	if err != nil {
		return nil, "", fmt.Errorf("read criu log: %w", err)
	}
	defer f.Close()
	var all []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		all = append(all, sc.Text())
	}
	if err := sc.Err(); err != nil {
		return nil, "", fmt.Errorf("read criu log %s: %w", logPath, err)
	}
	lines, reason = logErrors(all)
	return lines, reason, nil
}

func logErrors(all []string) (lines []string, reason string) {
	type errLine struct {
		i   int
		msg string
	}
	var errs, serious []errLine
	for i, l := range all {
		if msg, ok := errorMessage(l); ok {
			errs = append(errs, errLine{i, msg})
			if !isBenign(msg) {
				serious = append(serious, errLine{i, msg})
			}
		}
	}
	if len(serious) > 0 {
		errs = serious
	}
	if len(errs) == 0 {
		return nil, ""
	}

	reason = errs[0].msg
	for _, e := range errs {
		if !isSummary(e.msg) {
			reason = e.msg
			break
		}
	}

	seenMsg := make(map[string]bool)
	next := 0 // first line index not yet shown
	for _, e := range errs {
		if seenMsg[e.msg] {
			continue
		}
		seenMsg[e.msg] = true
		for i := max(e.i-logContext, next); i <= e.i && len(lines) < logMaxLines; i++ {
			if msg, ok := errorMessage(all[i]); ok && i < e.i && seenMsg[msg] {
				continue // a repeated error, as context
			}
			lines = append(lines, all[i])
		}
		next = e.i + 1
		if len(lines) >= logMaxLines {
			break
		}
	}
	return lines, reason
}

// CRIUError is a failed CRIU operation, explained by CRIU's own log.
type CRIUError struct {
	// Op is the CRIU operation: "dump", "pre-dump", "restore", ...
	Op string
	// Reason is CRIU's one-line explanation (see LogErrors), or "".
	Reason string
	// Lines are the error lines of the log with their context.
	Lines []string
	// LogPath is CRIU's full log.
	LogPath string
	// Err is the error the operation returned.
	Err error
}

// NewCRIUError returns the error of a failed op, with CRIU's explanation
// from the log at logPath. A log that cannot be read leaves Reason and
// Lines empty: Err is then the explanation.
func NewCRIUError(op, logPath string, err error) *CRIUError {
	e := &CRIUError{Op: op, LogPath: logPath, Err: err}
	if logPath != "" {
		e.Lines, e.Reason, _ = LogErrors(logPath)
	}
	return e
}

// Error is "criu dump failed: <reason> (full log: <path>)".
func (e *CRIUError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "criu %s failed", e.Op)
	switch {
	case e.Reason != "":
		b.WriteString(": " + e.Reason)
	case e.Err != nil:
		b.WriteString(": " + e.Err.Error())
	}
	if e.LogPath != "" {
		fmt.Fprintf(&b, " (full log: %s)", e.LogPath)
	}
	return b.String()
}

func (e *CRIUError) Unwrap() error { return e.Err }
