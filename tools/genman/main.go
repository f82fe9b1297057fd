// Command genman writes cr's man pages, one per command (cr.1, cr-kill.1,
// cr-images-ls.1, ...), from the same cobra tree that prints --help, with
// cobra's doc package. make install runs it.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra/doc"

	"github.com/cr-dev/cr/cmd"
)

func main() {
	out := flag.String("o", "man", "directory to write the pages to")
	flag.Parse()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "genman:", err)
		os.Exit(1)
	}
	// The date is the build's (SOURCE_DATE_EPOCH when set), so that two
	// builds of one commit give the same pages.
	date := time.Now()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		var sec int64
		if _, err := fmt.Sscan(s, &sec); err == nil {
			date = time.Unix(sec, 0)
		}
	}
	root := cmd.NewRoot()
	root.DisableAutoGenTag = true
	h := &doc.GenManHeader{Title: "CR", Section: "1", Date: &date, Source: "cr " + cmd.Version, Manual: "cr manual"}
	if err := doc.GenManTree(root, h, *out); err != nil {
		fmt.Fprintln(os.Stderr, "genman:", err)
		os.Exit(1)
	}
}
