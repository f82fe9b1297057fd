package cmd

import (
	"os"
	"strconv"
	"strings"
	"unicode"

	"golang.org/x/sys/unix"
)

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// quoteText returns s unchanged when every character in it is printable
// (spaces included), else Go-quoted (strconv.Quote): text that cr prints
// but does not control (a command line, an argv a process set itself) can
// then neither forge a line nor hide or reorder text on a terminal.
func quoteText(s string) string {
	for _, r := range s {
		if r != ' ' && !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// errorText is an error's message as cr prints it: every character that is
// not printable is replaced by its Go escape, except the newlines of cr's
// own multi-line messages (names from the tree's state are quoted where
// they are put into messages: nstree.Quote).
func errorText(err error) string {
	s := err.Error()
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\n' || r == ' ' || unicode.IsPrint(r):
			b.WriteRune(r)
		default:
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
	}
	return b.String()
}
