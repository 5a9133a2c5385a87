#!/usr/bin/env bash
# Prints the path of Beam's Flink job server jar (fetched or built with Maven into a lasting
# cache) that `java -jar` and Beam's --flink_job_server_jar run. scripts/flink_job_server.sh --help
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/flink_job_server.sh [--flink_version 1.19] [--sdk_version V] [--quiet]

Prints the path of a self-contained Beam Flink job-server jar, fetching it the first time.

First choice: Beam's own org.apache.beam:beam-runners-flink-<flink>-job-server:<sdk>, the
jar Beam's FlinkRunner downloads for the SDK version (default: the .venv's apache-beam), with
`mvn dependency:get`. Where Maven Central does not serve it (it serves it for no Beam version
at present), one line says so and the script builds the fallback: Beam 2.62.0's
beam-runners-flink-<flink> (which holds FlinkJobServerDriver) and its runtime dependencies in
one jar with Maven's shade plugin (service files merged), so that `java -jar` and
--flink_submit_uber_jar both take it. A miss is remembered for a day.

The fallback carries a rebuilt org.apache.beam.sdk.fn.server.ServerFactory: a server is bound
to the address it is given (the job server's --job-host), and the Fn API servers a TaskManager
opens for its Python workers bind the JVM system property beam.fn.bind_address when it is set
(scripts/flink_cluster.sh sets 127.0.0.1) and every interface otherwise, as Beam does; their
address for the workers is that address, or localhost.

  --flink_version   Flink minor version of the runner (default 1.19)
  --sdk_version     Beam version to look for (default: the .venv's apache_beam.__version__)
  --fallback_only   skip the look-up; print the assembled 2.62.0 jar
  --quiet           no progress lines on stderr (the fallback line is still printed)

Cache: $BEAM_IMAGE_LABELER_CACHE, else $XDG_CACHE_HOME/beam-image-labeler, else
~/.cache/beam-image-labeler; jars go under flink/. Needs java, javac and mvn on PATH, and
Maven Central. Exit status: 0 with the path on stdout, 2 for a bad flag, 3 when a tool or
Maven Central is missing (one line on stderr says which).
USAGE
}

die() { echo "flink_job_server.sh: error: $1" >&2; exit "${2:-2}"; }
here=$(cd "$(dirname "$0")" && pwd)
flink=1.19 beam=2.62.0 sdk= quiet= fallback_only=
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --flink_version=*) flink=${1#*=} ;;
    --flink_version) [ $# -ge 2 ] || die "--flink_version needs a value; see --help"; flink=$2; shift ;;
    --sdk_version=*) sdk=${1#*=} ;;
    --sdk_version) [ $# -ge 2 ] || die "--sdk_version needs a value; see --help"; sdk=$2; shift ;;
    --fallback_only) fallback_only=1 ;;
    --quiet) quiet=1 ;;
    *) die "unknown flag $1; see --help" ;;
  esac
  shift
done
[[ $flink =~ ^[0-9]+\.[0-9]+$ ]] || die "--flink_version is MAJOR.MINOR, like 1.19; got '$flink'"
if [ -z "$sdk$fallback_only" ]; then
  sdk=$("$here/../.venv/bin/python" -c 'import apache_beam; print(apache_beam.__version__)' 2>/dev/null) || sdk=
fi
[ -z "$sdk" ] || [[ $sdk =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--sdk_version is like 2.77.0; got '$sdk'"

cache=${BEAM_IMAGE_LABELER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/beam-image-labeler}
say() { [ -n "$quiet" ] || echo "flink_job_server.sh: $*" >&2; }
for tool in java javac mvn; do
  command -v "$tool" >/dev/null || die "unavailable: '$tool' is not on PATH (needs a JDK 11+ and Maven)" 3
done

# Beam's own job server for the SDK's version, where Maven Central serves it.
if [ -n "$sdk" ] && [ -z "$fallback_only" ]; then
  official=beam-runners-flink-$flink-job-server
  mkdir -p "$cache/flink"
  miss=$cache/flink/.not-served-$official-$sdk
  if [ -f "$cache/flink/$official-$sdk.jar" ]; then
    echo "$cache/flink/$official-$sdk.jar"
    exit 0
  fi
  if [ -z "$(find "$miss" -mmin -1440 2>/dev/null)" ]; then
    say "looking for org.apache.beam:$official:$sdk on Maven Central"
    if mvn -B -q dependency:get -Dtransitive=false \
      -Dartifact="org.apache.beam:$official:$sdk" >"$cache/flink/.mvn-get.log" 2>&1; then
      repo=$(mvn -B -q help:evaluate -Dexpression=settings.localRepository -DforceStdout 2>/dev/null)
      # Copied beside it, then renamed in (one step, whoever else fetches it at once).
      cp "${repo:-$HOME/.m2/repository}/org/apache/beam/$official/$sdk/$official-$sdk.jar" \
        "$cache/flink/$official-$sdk.jar.$$"
      mv "$cache/flink/$official-$sdk.jar.$$" "$cache/flink/$official-$sdk.jar"
      echo "$cache/flink/$official-$sdk.jar"
      exit 0
    fi
    touch "$miss"
  fi
  echo "flink_job_server.sh: Maven Central serves no org.apache.beam:$official:$sdk;" \
    "using the job server built from Beam $beam's beam-runners-flink-$flink" >&2
fi

home=$cache/flink/job-server-$beam-flink$flink-shaded
jar=$home/beam-runners-flink-$flink-job-server-$beam.jar
if [ -f "$home/.complete" ] && [ -f "$jar" ]; then
  echo "$jar"
  exit 0
fi

rm -rf "$cache/flink/job-server-$beam-flink$flink" # the earlier layout (a lib/ folder)
# A fresh folder each time, in the cache's own folder (one filesystem), so the jar is renamed
# into place in one step: a start running the jar already, or building it at the same time,
# never sees it half written.
mkdir -p "$cache/flink"
work=$(mktemp -d "$cache/flink/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/classes"
cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.beam-image-labeler</groupId>
  <artifactId>flink-job-server</artifactId>
  <version>1</version>
  <properties><project.build.sourceEncoding>UTF-8</project.build.sourceEncoding></properties>
  <dependencies>
    <dependency>
      <groupId>org.apache.beam</groupId>
      <artifactId>beam-runners-flink-$flink</artifactId>
      <version>$beam</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>1.7.30</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-shade-plugin</artifactId>
        <version>3.6.0</version>
        <executions>
          <execution>
            <phase>package</phase>
            <goals><goal>shade</goal></goals>
            <configuration>
              <createDependencyReducedPom>false</createDependencyReducedPom>
              <outputFile>$work/shaded.jar</outputFile>
              <filters>
                <filter>
                  <artifact>*:*</artifact>
                  <excludes>
                    <exclude>META-INF/*.SF</exclude>
                    <exclude>META-INF/*.DSA</exclude>
                    <exclude>META-INF/*.RSA</exclude>
                    <exclude>module-info.class</exclude>
                  </excludes>
                </filter>
              </filters>
              <transformers>
                <transformer implementation="org.apache.maven.plugins.shade.resource.ServicesResourceTransformer"/>
                <transformer implementation="org.apache.maven.plugins.shade.resource.AppendingTransformer">
                  <resource>reference.conf</resource>
                </transformer>
                <transformer implementation="org.apache.maven.plugins.shade.resource.ManifestResourceTransformer">
                  <mainClass>org.apache.beam.runners.flink.FlinkJobServerDriver</mainClass>
                </transformer>
              </transformers>
            </configuration>
          </execution>
        </executions>
      </plugin>
    </plugins>
  </build>
</project>
POM
say "building one jar from org.apache.beam:beam-runners-flink-$flink:$beam and its dependencies with Maven"
if ! mvn -B -q -f "$work/pom.xml" package >"$work/mvn.log" 2>&1; then
  grep -m1 'ERROR' "$work/mvn.log" >&2 || tail -3 "$work/mvn.log" >&2
  die "unavailable: Maven could not fetch or shade org.apache.beam:beam-runners-flink-$flink:$beam (is Maven Central reachable?)" 3
fi

# Beam's ServerFactory, with each TCP server bound to the address it is given.
grpc=$(python3 -c '
import re, sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
print(next(m.group(1) for n in names if (m := re.match(r"org/apache/beam/vendor/grpc/(v[0-9p]+)/", n))))
' "$work/shaded.jar" 2>/dev/null) || die "unavailable: no vendored gRPC in the shaded job server" 3
mkdir -p "$work/src/org/apache/beam/sdk/fn/server"
sed "s/GRPC/$grpc/g" >"$work/src/org/apache/beam/sdk/fn/server/ServerFactory.java" <<'JAVA'
package org.apache.beam.sdk.fn.server;

import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;
import org.apache.beam.model.pipeline.v1.Endpoints;
import org.apache.beam.sdk.fn.channel.SocketAddressFactory;
import org.apache.beam.vendor.grpc.GRPC.io.grpc.BindableService;
import org.apache.beam.vendor.grpc.GRPC.io.grpc.Server;
import org.apache.beam.vendor.grpc.GRPC.io.grpc.ServerInterceptors;
import org.apache.beam.vendor.grpc.GRPC.io.grpc.netty.NettyServerBuilder;

/**
 * Same API as Beam's gRPC server factory. A server created for an address listens on that
 * address, not on every interface. A server allocated a port (a TaskManager's Fn API servers
 * for its SDK workers) listens on the JVM system property beam.fn.bind_address where set, and
 * on every interface otherwise (Beam's behaviour); workers are given that address, or
 * localhost. Only TCP servers: the epoll variants, which this job server does not use, are
 * refused.
 */
public abstract class ServerFactory {
  public static ServerFactory createDefault() {
    return new InetSocketAddressServerFactory(UrlFactory.createDefault(), () -> 0);
  }

  public static ServerFactory createWithUrlFactory(UrlFactory urlFactory) {
    return new InetSocketAddressServerFactory(urlFactory, () -> 0);
  }

  public static ServerFactory createWithPortSupplier(Supplier<Integer> ports) {
    return new InetSocketAddressServerFactory(UrlFactory.createDefault(), ports);
  }

  public static ServerFactory createWithUrlFactoryAndPortSupplier(
      UrlFactory urlFactory, Supplier<Integer> ports) {
    return new InetSocketAddressServerFactory(urlFactory, ports);
  }

  public static ServerFactory createEpollSocket() {
    throw new UnsupportedOperationException("epoll servers are not built into this job server");
  }

  public static ServerFactory createEpollDomainSocket() {
    return createEpollSocket();
  }

  public abstract Server allocateAddressAndCreate(
      List<BindableService> services, Endpoints.ApiServiceDescriptor.Builder descriptor)
      throws IOException;

  public abstract Server create(
      List<BindableService> services, Endpoints.ApiServiceDescriptor descriptor)
      throws IOException;

  /** TCP servers on one address and port. */
  public static class InetSocketAddressServerFactory extends ServerFactory {
    private final UrlFactory urlFactory;
    private final Supplier<Integer> ports;

    private InetSocketAddressServerFactory(UrlFactory urlFactory, Supplier<Integer> ports) {
      this.urlFactory = urlFactory;
      this.ports = ports;
    }

    @Override
    public Server allocateAddressAndCreate(
        List<BindableService> services, Endpoints.ApiServiceDescriptor.Builder descriptor)
        throws IOException {
      String bind = System.getProperty("beam.fn.bind_address", "").trim();
      InetSocketAddress address =
          bind.isEmpty()
              ? new InetSocketAddress(ports.get())
              : new InetSocketAddress(InetAddress.getByName(bind), ports.get());
      Server server = listen(services, address);
      String host = bind.isEmpty() ? InetAddress.getLoopbackAddress().getHostName() : bind;
      descriptor.setUrl(urlFactory.createUrl(host, server.getPort()));
      return server;
    }

    @Override
    public Server create(List<BindableService> services, Endpoints.ApiServiceDescriptor descriptor)
        throws IOException {
      SocketAddress address = SocketAddressFactory.createFrom(descriptor.getUrl());
      if (!(address instanceof InetSocketAddress)) {
        throw new IllegalArgumentException("needs a host:port address, got " + descriptor.getUrl());
      }
      return listen(services, (InetSocketAddress) address);
    }

    private static Server listen(List<BindableService> services, InetSocketAddress address)
        throws IOException {
      NettyServerBuilder builder =
          NettyServerBuilder.forAddress(address)
              .maxInboundMessageSize(Integer.MAX_VALUE)
              .permitKeepAliveTime(20, TimeUnit.SECONDS);
      for (BindableService service : services) {
        builder.addService(
            ServerInterceptors.intercept(service, GrpcContextHeaderAccessorProvider.interceptor()));
      }
      return builder.build().start();
    }
  }

  /** The URL clients are given for a server's host and port. */
  @FunctionalInterface
  public interface UrlFactory {
    String createUrl(String address, int port);

    static UrlFactory createDefault() {
      return (host, port) -> (host.contains(":") ? "[" + host + "]" : host) + ":" + port;
    }
  }
}
JAVA
say "compiling the rebuilt ServerFactory into the jar"
javac -nowarn --release 11 -d "$work/classes" -cp "$work/shaded.jar" \
  "$work/src/org/apache/beam/sdk/fn/server/ServerFactory.java" >"$work/javac.log" 2>&1 ||
  { cat "$work/javac.log" >&2; die "could not compile the rebuilt ServerFactory" 1; }
jar --update --file "$work/shaded.jar" -C "$work/classes" . # replaces Beam's classes
mkdir -p "$home"
mv "$work/shaded.jar" "$jar"
touch "$home/.complete"
say "job server ready ($(du -sh "$jar" | cut -f1))"
echo "$jar"
