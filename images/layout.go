package images

import "path"

// LogName is the archive path of a container's captured output (its
// `cr logs`), kept beside its CRIU images: "container.log" for the root
// container, "containers/<n>/container.log" for the others.
func LogName(c Container) string { return path.Join(path.Dir(c.Dir), "container.log") }
