package orderflow.bench;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/** The command line, parsed and checked: what to run and against which broker and registry. */
final class Options {
    /** The usage text printed on a bad command line. */
    static final String USAGE = String.join("\n",
            "usage: java -jar orderflow-kstreams-bench.jar --bootstrap HOST:PORT --registry http://HOST:PORT",
            "           --job b1|b3 --guarantee at_least_once|exactly_once --app-id ID --state-dir DIR",
            "           --schemas DIR [--threads N]",
            "       java -jar orderflow-kstreams-bench.jar --bootstrap HOST:PORT --create-topics T1,T2,... [--partitions N]",
            "       java -jar orderflow-kstreams-bench.jar --self-test");

    /** The two benchmark jobs. */
    enum Job { B1, B3 }

    /** What the process does. */
    enum Mode { RUN, CREATE_TOPICS, SELF_TEST }

    final Mode mode;
    final String bootstrap;
    final String registry;
    final Job job;
    /** Kafka Streams' processing.guarantee value: at_least_once or exactly_once_v2. */
    final String processingGuarantee;
    final String appId;
    final Path stateDir;
    final Path schemas;
    final int threads;
    final List<String> topicsToCreate;
    final int partitions;

    private Options(Map<String, String> flags, boolean selfTest) {
        if (selfTest) {
            if (!flags.isEmpty()) {
                throw new IllegalArgumentException("--self-test takes no other flag");
            }
            mode = Mode.SELF_TEST;
        } else if (flags.containsKey("--create-topics")) {
            mode = Mode.CREATE_TOPICS;
        } else {
            mode = Mode.RUN;
        }
        bootstrap = mode == Mode.SELF_TEST ? null : required(flags, "--bootstrap");
        if (mode == Mode.CREATE_TOPICS) {
            topicsToCreate = new ArrayList<>(Arrays.asList(flags.remove("--create-topics").split(",")));
            topicsToCreate.removeIf(String::isBlank);
            partitions = positive(flags, "--partitions", 4);
            flags.remove("--bootstrap");
        } else {
            topicsToCreate = List.of();
            partitions = 0;
        }
        if (mode == Mode.RUN) {
            registry = stripSlash(required(flags, "--registry"));
            String jobFlag = required(flags, "--job");
            switch (jobFlag) {
                case "b1" -> job = Job.B1;
                case "b3" -> job = Job.B3;
                default -> throw new IllegalArgumentException("--job is b1 or b3, not " + jobFlag);
            }
            String guarantee = required(flags, "--guarantee");
            switch (guarantee) {
                case "at_least_once" -> processingGuarantee = "at_least_once";
                case "exactly_once" -> processingGuarantee = "exactly_once_v2";
                default -> throw new IllegalArgumentException(
                        "--guarantee is at_least_once or exactly_once, not " + guarantee);
            }
            appId = required(flags, "--app-id");
            stateDir = Path.of(required(flags, "--state-dir"));
            schemas = Path.of(required(flags, "--schemas"));
            threads = positive(flags, "--threads", 1);
            for (String known : List.of("--bootstrap", "--registry", "--job", "--guarantee", "--app-id",
                    "--state-dir", "--schemas", "--threads")) {
                flags.remove(known);
            }
        } else {
            registry = null;
            job = null;
            processingGuarantee = null;
            appId = null;
            stateDir = null;
            schemas = null;
            threads = 0;
        }
        if (!flags.isEmpty()) {
            throw new IllegalArgumentException("unknown or misplaced flags: " + flags.keySet());
        }
    }

    /** Parses {@code args}: {@code --flag value} pairs, or {@code --self-test} alone. */
    static Options parse(String[] args) {
        Map<String, String> flags = new HashMap<>();
        boolean selfTest = false;
        for (int i = 0; i < args.length; i++) {
            String arg = args[i];
            if (arg.equals("--self-test")) {
                selfTest = true;
                continue;
            }
            if (!arg.startsWith("--")) {
                throw new IllegalArgumentException("unexpected argument " + arg);
            }
            if (i + 1 >= args.length) {
                throw new IllegalArgumentException(arg + " needs a value");
            }
            if (flags.put(arg, args[++i]) != null) {
                throw new IllegalArgumentException(arg + " given twice");
            }
        }
        return new Options(flags, selfTest);
    }

    private static String required(Map<String, String> flags, String name) {
        String value = flags.get(name);
        if (value == null || value.isBlank()) {
            throw new IllegalArgumentException(name + " is required");
        }
        return value;
    }

    private static int positive(Map<String, String> flags, String name, int fallback) {
        String value = flags.remove(name);
        if (value == null) {
            return fallback;
        }
        try {
            int n = Integer.parseInt(value);
            if (n > 0) {
                return n;
            }
        } catch (NumberFormatException e) {
            // reported below
        }
        throw new IllegalArgumentException(name + " must be a positive integer, not " + value);
    }

    private static String stripSlash(String url) {
        return url.endsWith("/") ? url.substring(0, url.length() - 1) : url;
    }
}
