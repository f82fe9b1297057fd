package images

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"strconv"
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
)

// Values cr writes into the checkpointctl metadata files.
const (
	// ManagerName is the spec.dump annotation io.container.manager and the
	// runtime and engine names in config.dump and spec.dump. checkpointctl
	// v1.6.0 knows "libpod" and "cri-o" and shows any other manager as
	// containerd, taking the name from io.kubernetes.cri.container-name.
	ManagerName = "cr"

	annotationManager       = "io.container.manager"
	annotationContainerName = "io.kubernetes.cri.container-name"
)

// ociSpec is the part of an OCI runtime spec (config.json) that spec.dump
// holds for a cr container. cr containers share the host's root filesystem.
type ociSpec struct {
	Version     string            `json:"ociVersion"`
	Process     ociProcess        `json:"process"`
	Root        ociRoot           `json:"root"`
	Annotations map[string]string `json:"annotations"`
	Linux       ociLinux          `json:"linux"`
}

type ociProcess struct {
	Args []string `json:"args,omitempty"`
	Env  []string `json:"env,omitempty"`
	Cwd  string   `json:"cwd"`
}

type ociRoot struct {
	Path string `json:"path"`
}

type ociLinux struct {
	Namespaces []ociNamespace `json:"namespaces,omitempty"`
}

type ociNamespace struct {
	Type string `json:"type"`
}

// ociNamespaceTypes maps cr's namespace names to the OCI spec's.
var ociNamespaceTypes = map[string]string{
	"pid": "pid", "ipc": "ipc", "uts": "uts", "mnt": "mount", "net": "network",
	"user": "user", "cgroup": "cgroup", "time": "time",
}

// ErrNotSingle is returned by WriteCheckpointctlFiles for a manifest that is
// not a single container with its images in checkpoint/.
var ErrNotSingle = errors.New("not a single-container image")

// WriteCheckpointctlFiles writes config.dump and spec.dump into stagingDir so
// that checkpointctl show and inspect understand a single-container image:
// m must list exactly one container, with its images in "checkpoint". name
// is the container's name as checkpointctl shows it; empty means the last
// element of m.Root. Call it before WriteArchive, which then archives the
// two files like any other.
func WriteCheckpointctlFiles(stagingDir string, m *Manifest, name string) error {
	if len(m.Containers) != 1 || m.Containers[0].Empty || m.Containers[0].Dir != metadata.CheckpointDirectory {
		return fmt.Errorf("write checkpointctl files: %w (%d containers)", ErrNotSingle, len(m.Containers))
	}
	c := m.Containers[0]
	if name == "" {
		name = path.Base(m.Root)
		if name == "/" || name == "." {
			name = ManagerName
		}
	}
	checkpointed := m.Created
	if checkpointed.IsZero() {
		checkpointed = time.Now().UTC()
	}
	// A stable identifier of this container instance, shaped like the ids
	// of other engines.
	id := sha256.Sum256(fmt.Appendf(nil, "%s\x00%d\x00%s", m.Root, c.InitPid, c.Created.Format(time.RFC3339Nano)))
	config := metadata.ContainerConfig{
		ID:             hex.EncodeToString(id[:]),
		Name:           name,
		OCIRuntime:     ManagerName,
		CreatedTime:    c.Created,
		CheckpointedAt: checkpointed,
	}
	spec := ociSpec{
		Version: "1.2.0",
		Process: ociProcess{Args: c.Command, Env: c.Env, Cwd: c.Cwd},
		Root:    ociRoot{Path: "/"},
		Annotations: map[string]string{
			annotationManager:                       ManagerName,
			annotationContainerName:                 name,
			metadata.CheckpointAnnotationEngine:     ManagerName,
			metadata.CheckpointAnnotationName:       name,
			metadata.CheckpointAnnotationHostArch:   m.Arch,
			metadata.CheckpointAnnotationHostKernel: m.Kernel,
		},
	}
	if m.CRVersion != "" {
		spec.Annotations[metadata.CheckpointAnnotationEngineVersion] = m.CRVersion
	}
	if m.CRIUVersion != 0 {
		spec.Annotations[metadata.CheckpointAnnotationCriuVersion] = strconv.Itoa(m.CRIUVersion)
	}
	for _, ns := range c.Namespaces {
		t, ok := ociNamespaceTypes[ns]
		if !ok {
			return fmt.Errorf("write checkpointctl files: unknown namespace %q", ns)
		}
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, ociNamespace{Type: t})
	}
	if _, err := metadata.WriteJSONFile(config, stagingDir, metadata.ConfigDumpFile); err != nil {
		return fmt.Errorf("write %s: %w", metadata.ConfigDumpFile, err)
	}
	if _, err := metadata.WriteJSONFile(spec, stagingDir, metadata.SpecDumpFile); err != nil {
		return fmt.Errorf("write %s: %w", metadata.SpecDumpFile, err)
	}
	return nil
}
