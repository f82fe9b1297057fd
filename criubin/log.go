package criubin

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
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

// Where the logs of failed CRIU operations are kept: CRIU writes its log in
// the operation's work directory, which goes when the operation ends, so
// the log of a failure is copied into the log directory first, under a
// name no other copy has, and only the newest MaxKeptLogs copies stay.
const (
	// LogDirName is the log directory's name in cr's state directory.
	LogDirName = "criu-logs"
	// MaxKeptLogs bounds the logs kept in a log directory.
	MaxKeptLogs = 50
)

// LogDir is the log directory under cr's state directory.
func LogDir(stateDir string) string { return filepath.Join(stateDir, LogDirName) }

// keptTime is the kept logs' time stamp: UTC to the nanosecond, so that
// names sort as the failures happened.
const keptTime = "20060102T150405.000000000Z"

// keptName is a kept log's name: time, operation, subject, and a random
// part, so that two failures in the same nanosecond still differ:
// "20261201T215500.123456789Z-dump-lab_pi-1a2b3c4d.log".
func keptName(now time.Time, op, what string) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return fmt.Sprintf("%s-%s-%s-%s.log", now.UTC().Format(keptTime), safeName(op), safeName(what), hex.EncodeToString(b))
}

// safeName makes a container path or an operation a part of a file name.
func safeName(s string) string {
	s = strings.Trim(s, "/")
	if s == "" {
		s = "root"
	}
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '+') {
			b[i] = '_'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}

// isKept reports whether name is the name of a kept log.
func isKept(name string) bool {
	if len(name) < len(keptTime)+5 || !strings.HasSuffix(name, ".log") || name[len(keptTime)] != '-' {
		return false
	}
	_, err := time.Parse(keptTime, name[:len(keptTime)])
	return err == nil
}

// KeepLog copies the CRIU log at src into dir (created, mode 0700) under
// a new name (see keptName), removes the oldest kept logs beyond
// MaxKeptLogs, and returns the copy's path.
func KeepLog(dir, op, what, src string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("keep criu log: %w", err)
	}
	defer in.Close()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("keep criu log: %w", err)
	}
	var out *os.File
	for {
		out, err = os.OpenFile(filepath.Join(dir, keptName(time.Now(), op, what)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if !errors.Is(err, fs.ErrExist) {
			break
		}
	}
	if err != nil {
		return "", fmt.Errorf("keep criu log: %w", err)
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out.Name())
		return "", fmt.Errorf("keep criu log: %w", err)
	}
	pruneLogs(dir, MaxKeptLogs)
	return out.Name(), nil
}

// pruneLogs removes the oldest kept logs in dir beyond keep.
func pruneLogs(dir string, keep int) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() && isKept(e.Name()) {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	for len(names) > keep {
		os.Remove(filepath.Join(dir, names[0]))
		names = names[1:]
	}
}

// Failed is the error of a CRIU op that failed on the container at path,
// whose log is at log in a work directory that goes: the log is kept in
// logDir (KeepLog), and the error says CRIU's reason, with its lines and
// the kept log's path (the original's, if it could not be kept).
func Failed(op, path, log, logDir string, err error) *CRIUError {
	kept := log
	if k, kerr := KeepLog(logDir, op, path, log); kerr == nil {
		kept = k
	}
	e := NewCRIUError(op, kept, err)
	if e.Reason == "" {
		e.Reason = err.Error()
	}
	e.Reason = path + ": " + e.Reason
	return e
}

// KeepErrorLog keeps the log of the CRIUError in err's chain, if there is
// one and its log exists, in logDir (KeepLog) and points the error at the
// copy. what names the container in the copy's name.
func KeepErrorLog(err error, logDir, what string) {
	var e *CRIUError
	if !errors.As(err, &e) || e.LogPath == "" {
		return
	}
	if k, kerr := KeepLog(logDir, e.Op, what, e.LogPath); kerr == nil {
		e.LogPath = k
	}
}
