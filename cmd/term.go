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

// oneLine returns s with every character that is not printable (a space
// is) replaced by its Go escape ("\n", "\x1b", "\u202e"): text that cr
// prints but does not control (a command line, an argv a process set
// itself, an image's metadata) can then neither forge a line nor hide or
// reorder text on a terminal.
func oneLine(s string) string { return escape(s, false) }

// errorText is an error's message as cr prints it: oneLine, except for the
// newlines of cr's own multi-line messages (names from the tree's state
// are quoted where they are put into messages: nstree.Quote).
func errorText(err error) string { return escape(err.Error(), true) }

func escape(s string, keepNewlines bool) string {
	printable := func(r rune) bool { return r == ' ' || r == '\n' && keepNewlines || unicode.IsPrint(r) }
	if !strings.ContainsFunc(s, func(r rune) bool { return !printable(r) }) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if printable(r) {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRune(r)
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}
